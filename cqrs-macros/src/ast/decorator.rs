//! The options of the decorator attributes, typed: what the user wrote and where.
//!
//! Each `from_args` reads an attribute's parsed arguments. An option left out is `None`: the
//! runtime decides its default, and the generated code mentions only what was written.

use std::time::Duration;

use proc_macro2::Span;
use syn::{Ident, LitStr};

use crate::attr::{Args, Kind, Leading, Positional, Spec, Value, opt, suggest};
use crate::duration;
use crate::errors::Errors;

/// `#[retry(max_attempts = 3, delay = "50ms", backoff = 2.0, max_delay = "1s", jitter = true,
/// on = [Conflict, Unavailable])]`.
pub(crate) struct RetryOptions {
    pub(crate) max_attempts: Option<(u32, Span)>,
    pub(crate) delay: Option<(Duration, Span)>,
    pub(crate) backoff: Option<(f64, Span)>,
    pub(crate) max_delay: Option<(Duration, Span)>,
    pub(crate) jitter: Option<Jitter>,
    /// The statuses to retry, with the span of the list's brackets.
    pub(crate) on: Option<(Span, Vec<Ident>)>,
}

/// `jitter = true` (the runtime's default fraction) or `jitter = 0.2`.
pub(crate) enum Jitter {
    /// `jitter = false`: exact delays.
    Off,
    Default,
    Fraction(f64, Span),
}

impl RetryOptions {
    pub(crate) const ATTRIBUTE: &'static str = "retry";
    pub(crate) const SPECS: &'static [Spec] = &[
        opt("max_attempts", Kind::Int),
        opt("delay", Kind::Duration),
        opt("backoff", Kind::Float),
        opt("max_delay", Kind::Duration),
        opt("jitter", Kind::BoolOrFloat),
        opt("on", Kind::Idents),
    ];

    pub(crate) fn from_args(mut args: Args, errors: &mut Errors) -> Self {
        let max_attempts = args.int("max_attempts").and_then(|(n, span)| {
            let n = u32::try_from(n).ok();
            if n.is_none() {
                errors.at(span, format!("`max_attempts` is at most {}", u32::MAX));
            }
            n.map(|n| (n, span))
        });
        let backoff = match args.take("backoff") {
            Some((_, Value::Float(f, span))) => Some((f, span)),
            _ => None,
        };
        let jitter = match args.take("jitter") {
            Some((_, Value::Bool(true, _))) => Some(Jitter::Default),
            Some((_, Value::Bool(false, _))) => Some(Jitter::Off),
            Some((_, Value::Float(f, span))) => Some(Jitter::Fraction(f, span)),
            _ => None,
        };
        RetryOptions {
            max_attempts,
            delay: args.duration("delay"),
            backoff,
            max_delay: args.duration("max_delay"),
            jitter,
            on: args.take_spanned_idents("on"),
        }
    }
}

/// `#[cached_query(ttl = "5m", vary_by = [fields], cache_none = false, max_entries = 10000,
/// public)]`.
pub(crate) struct CacheOptions {
    pub(crate) ttl: Option<(Duration, Span)>,
    /// The fields the key is made of, with the span of the list's brackets.
    pub(crate) vary_by: Option<(Span, Vec<Ident>)>,
    pub(crate) cache_none: Option<bool>,
    pub(crate) max_entries: Option<(u64, Span)>,
    pub(crate) public: Option<bool>,
}

impl CacheOptions {
    pub(crate) const ATTRIBUTE: &'static str = "cached_query";
    pub(crate) const SPECS: &'static [Spec] = &[
        opt("ttl", Kind::Duration),
        opt("vary_by", Kind::Idents),
        opt("cache_none", Kind::Bool),
        opt("max_entries", Kind::Int),
        opt("public", Kind::Flag),
    ];

    pub(crate) fn from_args(mut args: Args) -> Self {
        CacheOptions {
            ttl: args.duration("ttl"),
            vary_by: args.take_spanned_idents("vary_by"),
            cache_none: args.bool("cache_none").map(|(b, _)| b),
            max_entries: args.int("max_entries"),
            public: args.bool("public").map(|(b, _)| b),
        }
    }
}

/// `#[authorize(permissions = [..], roles = [..], resource = field, admin_override)]`.
pub(crate) struct AuthorizeOptions {
    pub(crate) permissions: Option<Vec<LitStr>>,
    pub(crate) roles: Option<Vec<LitStr>>,
    /// The field of the message handed to the resource policy.
    pub(crate) resource: Option<Ident>,
    pub(crate) admin_override: bool,
}

impl AuthorizeOptions {
    pub(crate) const ATTRIBUTE: &'static str = "authorize";
    pub(crate) const SPECS: &'static [Spec] = &[
        opt("permissions", Kind::Strs),
        opt("roles", Kind::Strs),
        opt("resource", Kind::Ident),
        opt("admin_override", Kind::Flag),
    ];

    pub(crate) fn from_args(mut args: Args) -> Self {
        AuthorizeOptions {
            permissions: args.strs("permissions"),
            roles: args.strs("roles"),
            resource: args.ident("resource"),
            admin_override: matches!(args.bool("admin_override"), Some((true, _))),
        }
    }
}

/// `#[timeout("2s")]`.
pub(crate) struct TimeoutOption {
    pub(crate) duration: Duration,
    /// The string it was written as.
    pub(crate) written: LitStr,
}

impl TimeoutOption {
    pub(crate) const ATTRIBUTE: &'static str = "timeout";
    pub(crate) const LEADING: Leading = Leading::Str("\"2s\"");

    /// `None` when no duration could be read (and the mistake is reported).
    pub(crate) fn from_args(args: Args, errors: &mut Errors) -> Option<Self> {
        let mut strings = args.positional.iter().filter_map(|p| match p {
            Positional::Str(s) => Some(s),
            Positional::Type(_) => None,
        });
        let Some(lit) = strings.next() else {
            errors.at(
                Span::call_site(),
                "`#[timeout]` needs a duration: `#[timeout(\"2s\")]`",
            );
            return None;
        };
        for extra in strings {
            errors.spanned(extra, "`#[timeout]` takes one duration");
        }
        match duration::parse(&lit.value()) {
            Ok(duration) => Some(TimeoutOption {
                duration,
                written: lit.clone(),
            }),
            Err(message) => {
                errors.spanned(lit, message);
                None
            }
        }
    }
}

/// `#[transactional(isolation = "serializable", rollback_on = [..])]`.
pub(crate) struct TransactionalOptions {
    /// The `Isolation` variant, spanned on the string it was written as.
    pub(crate) isolation: Option<Ident>,
    pub(crate) rollback_on: Option<Vec<Ident>>,
}

/// The isolation levels, as written in `isolation = ".."`, and their `Isolation` variants.
const LEVELS: &[(&str, &str)] = &[
    ("read_committed", "ReadCommitted"),
    ("repeatable_read", "RepeatableRead"),
    ("serializable", "Serializable"),
];

impl TransactionalOptions {
    pub(crate) const ATTRIBUTE: &'static str = "transactional";
    pub(crate) const SPECS: &'static [Spec] = &[
        opt("isolation", Kind::Str),
        opt("rollback_on", Kind::Idents),
    ];

    pub(crate) fn from_args(mut args: Args, errors: &mut Errors) -> Self {
        let isolation = args
            .str("isolation")
            .and_then(|level| isolation_variant(&level, errors));
        TransactionalOptions {
            isolation,
            rollback_on: args.idents("rollback_on"),
        }
    }
}

/// The `Isolation` variant a level names (`"serializable"`, also written `"Serializable"` or
/// `"repeatable-read"`), or the report of an unknown one.
fn isolation_variant(level: &LitStr, errors: &mut Errors) -> Option<Ident> {
    let written = level.value();
    let normalized = written.trim().to_ascii_lowercase().replace([' ', '-'], "_");
    if let Some((_, variant)) = LEVELS.iter().find(|(name, _)| *name == normalized) {
        return Some(Ident::new(variant, level.span()));
    }
    let known: Vec<String> = LEVELS
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect();
    let known = known.join(", ");
    let message = match suggest::closest(&normalized, LEVELS.iter().map(|(n, _)| *n)) {
        Some(guess) => format!(
            "unknown isolation level \"{written}\": did you mean \"{guess}\"? The levels are {known}"
        ),
        None => format!("unknown isolation level \"{written}\"; the levels are {known}"),
    };
    errors.spanned(level, message);
    None
}

/// `#[exclusive(key = field, name = "account")]`.
pub(crate) struct ExclusiveOptions {
    /// The command's field whose value is the lock's key.
    pub(crate) key: Ident,
    /// The lock space shared with other commands (default: the command's name).
    pub(crate) name: Option<LitStr>,
}

impl ExclusiveOptions {
    pub(crate) const ATTRIBUTE: &'static str = "exclusive";
    pub(crate) const SPECS: &'static [Spec] = &[opt("key", Kind::Ident), opt("name", Kind::Str)];

    /// `None` without `key` (reported: there is nothing to lock on).
    pub(crate) fn from_args(mut args: Args, errors: &mut Errors) -> Option<Self> {
        let name = args.str("name");
        let Some(key) = args.ident("key") else {
            errors.at(
                Span::call_site(),
                "`#[exclusive]` needs the field to lock on: `#[exclusive(key = account_id)]` (and `name = \"account\"` to share the lock with other commands)",
            );
            return None;
        };
        Some(ExclusiveOptions { key, name })
    }
}
