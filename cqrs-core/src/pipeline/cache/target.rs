//! Targeted invalidation: `invalidates = [GetProduct(id = product_id)]` drops only the answers
//! of `GetProduct` whose `id` is the command's `product_id`, for every caller.
//!
//! The macro checks at compile time that the query has each field and that its type is the
//! command field's; [`build()`](crate::BusBuilder::build) checks that the mapping names exactly
//! the query's `vary_by` fields (the key hashes all of them, in the query's order, so a partial
//! mapping could not compute it). The command's fields are hashed the way the query's are
//! ([`hash_key_field`](crate::__private::hash_key_field)), so the target is the hash of the
//! query's `vary_by` fields: the answer's key for a `public` query, the part of it every caller
//! shares otherwise.

use std::any::Any;
use std::fmt;
use std::hash::Hasher;

use super::cache_key;
use crate::message::MessageInfo;

/// Hashes the command field mapped to the query field named (the macro generates it): `false`
/// when the name is not in the mapping or the command is not of the handler's type.
pub type TargetFieldHash = fn(&(dyn Any + Send + Sync), &str, &mut dyn Hasher) -> bool;

/// One `invalidates = [Query(field = command_field, ..)]` entry, as the macro registers it.
#[derive(Clone, Copy)]
pub struct AnswerTarget {
    pub(crate) query: fn() -> MessageInfo,
    pub(crate) fields: &'static [&'static str],
    pub(crate) hash: TargetFieldHash,
}

impl AnswerTarget {
    /// The query, the query fields the mapping names (in the order written), and the function
    /// that hashes the command field mapped to one of them.
    pub const fn new(
        query: fn() -> MessageInfo,
        fields: &'static [&'static str],
        hash: TargetFieldHash,
    ) -> Self {
        AnswerTarget {
            query,
            fields,
            hash,
        }
    }

    /// The query's information.
    pub fn query(&self) -> MessageInfo {
        (self.query)()
    }

    /// The query fields the mapping names.
    pub fn fields(&self) -> &'static [&'static str] {
        self.fields
    }
}

impl fmt::Debug for AnswerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", (self.query)().name)?;
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(field)?;
        }
        f.write_str(")")
    }
}

/// What a command invalidates when it succeeds, checked against the query at `build()`.
#[derive(Clone)]
pub(crate) struct Invalidates {
    pub(crate) query: &'static str,
    /// `None`: every answer of the query.
    pub(crate) target: Option<Targeted>,
}

/// A target resolved against the query's `vary_by`: the fields in the query's order.
#[derive(Clone)]
pub(crate) struct Targeted {
    pub(crate) vary_by: &'static [&'static str],
    pub(crate) hash: TargetFieldHash,
}

impl Invalidates {
    /// The whole query.
    pub(crate) fn all(query: &'static str) -> Self {
        Invalidates {
            query,
            target: None,
        }
    }

    /// The target of `command` (`None` for the whole query, or if a field could not be hashed,
    /// which `build()` rules out).
    pub(crate) fn target_of(&self, command: &(dyn Any + Send + Sync)) -> Option<u128> {
        let targeted = self.target.as_ref()?;
        let mut complete = true;
        let key = cache_key(|h| {
            for field in targeted.vary_by {
                complete &= (targeted.hash)(command, field, h);
            }
        });
        complete.then_some(key)
    }
}

impl fmt::Debug for Invalidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Invalidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.query)?;
        if let Some(t) = &self.target {
            write!(f, "({})", t.vary_by.join(", "))?;
        }
        Ok(())
    }
}

/// One invalidation a successful command asks for: a query, and one target or all answers
/// (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalidation {
    pub(crate) query: &'static str,
    pub(crate) target: Option<u128>,
}

impl Invalidation {
    /// Every answer of `query`.
    pub(crate) fn all(query: &'static str) -> Self {
        Invalidation {
            query,
            target: None,
        }
    }
}

/// Whether some entry drops answers by field (and so needs the command before its handler).
#[inline]
pub(crate) fn by_field(list: &[Invalidates]) -> bool {
    list.iter().any(|i| i.target.is_some())
}

/// The invalidations `command` asks for, computed before the handler takes the command (into
/// the full path, for after the handler). Nothing to do, and no allocation, for a command
/// whose entries are all whole queries.
#[inline]
pub(crate) fn compute(
    list: &[Invalidates],
    command: &(dyn Any + Send + Sync),
    out: &mut Vec<Invalidation>,
) {
    if !by_field(list) {
        return;
    }
    out.clear();
    out.extend(list.iter().map(|i| Invalidation {
        query: i.query,
        target: i.target_of(command),
    }));
}
