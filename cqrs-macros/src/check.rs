//! Checks of what each option means and of how options and attributes go together: a timeout
//! given twice, a zero `ttl`, `max_delay` shorter than `delay`, a status that cannot be retried.
//!
//! Each check reports on the narrowest token and takes out of the model what cannot be
//! generated (a `backoff` below 1.0), so that code generation only sees values it can write.
//! A decorator on the wrong kind of handler is not checked here: the generated code names the
//! handler through a trait only the right handler attributes implement, and rustc reports it.

use quote::ToTokens;
use syn::{Ident, ItemStruct};

use crate::ast::{
    AuthorizeOptions, CacheOptions, ExclusiveOptions, HandlerAttr, HandlerKind, HandlerStruct,
    Jitter, Message, MessageInput, RetryOptions, TimeoutOption, TransactionalOptions,
};
use crate::attr::status;
use crate::errors::Errors;
use crate::item::{self, HANDLER_ATTRIBUTES};

const ZERO_TIMEOUT: &str = "a timeout of zero would fail every dispatch; give a positive duration";

/// Reports the attributes below `attribute` that clash with it (the same one again; a second
/// handler attribute) and removes them, so that the clash is one error. The outermost attribute
/// expands first and sees all the others.
pub(crate) fn clashing_attributes(item: &mut ItemStruct, attribute: &str, errors: &mut Errors) {
    let is_handler = HANDLER_ATTRIBUTES.contains(&attribute);
    item.attrs.retain(|attr| {
        let Some(name) = item::attribute_name(attr) else {
            return true;
        };
        if name == attribute {
            let what = if is_handler {
                "a struct is one handler; declare another struct for another message".to_owned()
            } else {
                format!("a handler takes each decorator once; put every option in one `#[{name}(..)]`")
            };
            errors.spanned(attr.path(), format!("duplicate `#[{name}]`: {what}"));
            false
        } else if is_handler && HANDLER_ATTRIBUTES.contains(&name.as_str()) {
            errors.spanned(
                attr.path(),
                format!(
                    "a struct is one handler: it cannot be both `#[{attribute}]` and `#[{name}]`; declare another struct"
                ),
            );
            false
        } else {
            true
        }
    });
}

/// A handler attribute and its struct.
pub(crate) fn handler(attr: &HandlerAttr, handler: &mut HandlerStruct, errors: &mut Errors) {
    let attribute = attr.kind.attribute();
    if let Some(group) = &attr.group {
        let value = group.value();
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.spanned(
                group,
                "a consumer group is a name without spaces, e.g. \"order_projection\"",
            );
        }
    }
    if let Some((d, span)) = attr.timeout {
        if d.is_zero() {
            errors.at(span, ZERO_TIMEOUT);
        }
        // A `#[timeout]` below has not expanded yet: report it (the second one written).
        if let Some(second) = item::attribute(&handler.item, "timeout") {
            errors.spanned(
                second.path(),
                format!(
                    "the timeout is given twice: here and in `#[{attribute}(.., timeout = ..)]`; keep one"
                ),
            );
        }
    }
    if let Some(reason) = attr
        .reads_queries
        .as_ref()
        .filter(|r| r.value().trim().is_empty())
    {
        errors.spanned(
            reason,
            "`reads_queries` documents why this command handler reads the query side: say why, e.g. `reads_queries = \"look up the user id by email\"`",
        );
    }
    segregation(attr, &handler.item, errors);
    shareable_fields(handler);
}

/// Commands and queries are kept apart: a command handler does not read the query side unless
/// it says why (`reads_queries`), so that what a command decides on is loaded in its own
/// transaction; a query handler never holds the whole bus, with which it could send commands.
fn segregation(attr: &HandlerAttr, item: &ItemStruct, errors: &mut Errors) {
    let documented = attr.reads_queries.is_some();
    let command = match &attr.message {
        Message::Named(ty) => ty.to_token_stream().to_string().replace(' ', ""),
        Message::Missing(_) => attr.kind.example().to_owned(),
    };
    for (name, field) in item::fields(item) {
        match attr.kind {
            HandlerKind::Command if !documented => {
                if let Some(bus) = item::mentions(&field.ty, &["QueryBus", "Bus"]) {
                    // The whole bus is also how one would send commands: say how to do that.
                    let sends = if bus == "Bus" {
                        ". To send commands, a handler needs no field: `cx.send(..)` sends them as children of this one"
                    } else {
                        ""
                    };
                    errors.spanned(
                        &field.ty,
                        format!(
                            "a command handler must not ask queries, and field `{name}` holds a `{bus}`: \
                             load what the command needs in its transaction (a repository, the event store) or carry it in the command. \
                             If this handler must ask queries, say why: \
                             `#[command_handler({command}, reads_queries = \"look up the user id by email\")]`{sends}"
                        ),
                    );
                }
            }
            HandlerKind::Query if item::mentions(&field.ty, &["Bus"]).is_some() => {
                errors.spanned(
                    &field.ty,
                    format!(
                        "a query handler must not hold the `Bus` (field `{name}`): with it, it could send commands. \
                         Hold a `QueryBus` to ask other queries"
                    ),
                );
            }
            _ => {}
        }
    }
}

/// A handler serves many requests at once, so a field that cannot be shared between threads
/// can never work. The error is kept with the field (see [`crate::ast::handler::Dependency`]) rather than
/// reported beside it.
fn shareable_fields(handler: &mut HandlerStruct) {
    for (field, dependency) in handler.item.fields.iter().zip(&mut handler.dependencies) {
        if let Some(what) = item::thread_unsafe(&field.ty) {
            let name = dependency.member.to_token_stream().to_string();
            dependency.unshareable = Some(syn::Error::new_spanned(
                &field.ty,
                format!(
                    "field `{name}` holds {what}, which cannot be shared between threads, and a handler serves many requests at once: \
                     use `Arc` (and `Mutex` or `RwLock` in place of `RefCell` or `Cell`)"
                ),
            ));
        }
    }
}

/// A message's name is what logs, metrics, caches and stores know it by.
pub(crate) fn message(message: &MessageInput, errors: &mut Errors) {
    if let Some(n) = &message.name {
        let value = n.value();
        if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
            errors.spanned(
                n,
                format!(
                    "a {} name is not empty and has no spaces, e.g. \"users.register\"",
                    message.kind.attribute()
                ),
            );
        }
    }
    if let (Some(field), syn::Data::Enum(_)) = (&message.partition_key, &message.input.data) {
        errors.spanned(
            field,
            format!(
                "`partition_key` names a field, and `{}` is an enum: an enum's events are usually one aggregate's (saved with `cx.save`, they are keyed by it already); otherwise make it a struct with the key as a field",
                message.input.ident
            ),
        );
    }
}

/// Statuses decided before the retry layer runs: retrying cannot change them.
const NEVER_RETRIED: &[(&str, &str)] = &[
    (
        "Validation",
        "the message is validated before the retry layer runs, and would fail the same way again",
    ),
    (
        "NoHandler",
        "a missing handler is found before the retry layer runs, and would be missing again",
    ),
];

pub(crate) fn retry(options: &mut RetryOptions, errors: &mut Errors) {
    if let Some((0, span)) = options.max_attempts {
        errors.at(
            span,
            "`max_attempts` counts the first attempt too, so it must be at least 1 (`1` never retries)",
        );
        options.max_attempts = None;
    }
    if let Some((f, span)) = options.backoff
        && (f < 1.0 || !f.is_finite())
    {
        errors.at(
            span,
            format!(
                "`backoff` multiplies the delay after each attempt, so it must be at least 1.0 (`1.0` keeps the delay constant); `{f}` would shrink it"
            ),
        );
        options.backoff = None;
    }
    if let (Some((delay, _)), Some((max, span))) = (options.delay, options.max_delay)
        && delay > max
    {
        errors.at(
            span,
            format!(
                "`max_delay` ({max:?}) is shorter than `delay` ({delay:?}): it caps the delay, so make it at least as long"
            ),
        );
    }
    if let Some(Jitter::Fraction(f, span)) = options.jitter
        && !(0.0..=1.0).contains(&f)
    {
        errors.at(
            span,
            "`jitter` is the random fraction of each delay, between 0.0 and 1.0 (or `true` for the default, `RetryLayer::DEFAULT_JITTER`)",
        );
        options.jitter = None;
    }
    if let Some((list_span, on)) = &mut options.on {
        let mut retried = Vec::new();
        for status in on.iter() {
            match NEVER_RETRIED.iter().find(|(name, _)| status == name) {
                Some((_, why)) => errors.spanned(
                    status,
                    format!("`{status}` is never retried: {why}; retry transient statuses such as `Conflict`, `Timeout` or `Unavailable`"),
                ),
                None => retried.push(status.clone()),
            }
        }
        let retried = status::statuses(&retried, "on", errors);
        if on.is_empty() {
            errors.at(
                *list_span,
                "`on = []` would retry nothing; list the statuses to retry, or remove `#[retry]`",
            );
        }
        *on = retried;
    }
}

pub(crate) fn cache(options: &CacheOptions, errors: &mut Errors) {
    if let Some((ttl, span)) = options.ttl
        && ttl.is_zero()
    {
        errors.at(
            span,
            "a `ttl` of zero caches nothing; give a positive duration, or remove `#[cached_query]`",
        );
    }
    if let Some((list_span, fields)) = &options.vary_by {
        let mut seen: Vec<&Ident> = Vec::new();
        for f in fields {
            if seen.contains(&f) {
                errors.spanned(f, format!("`{f}` is listed twice in `vary_by`"));
            }
            seen.push(f);
        }
        if fields.is_empty() {
            errors.at(
                *list_span,
                "`vary_by = []` would give every query the same key; list the fields, or leave `vary_by` out to key on the whole query",
            );
        }
    }
    if let Some((0, span)) = options.max_entries {
        errors.at(
            span,
            "`max_entries = 0` caches nothing; give a positive limit",
        );
    }
}

pub(crate) fn authorize(options: &AuthorizeOptions, errors: &mut Errors) {
    for (option, list) in [
        ("permissions", &options.permissions),
        ("roles", &options.roles),
    ] {
        for s in list.iter().flatten() {
            if s.value().trim().is_empty() {
                errors.spanned(s, format!("an empty string in `{option}` can never match"));
            }
        }
    }
}

pub(crate) fn timeout(option: &TimeoutOption, item: &ItemStruct, errors: &mut Errors) {
    if option.duration.is_zero() {
        errors.spanned(&option.written, ZERO_TIMEOUT);
    }
    // The handler attribute below also sets one: report it there (the second one written).
    if let Some(second) = item::handler_option(item, "timeout") {
        errors.spanned(
            &second,
            "the timeout is given twice: here and in `#[timeout(..)]`; keep one",
        );
    }
}

pub(crate) fn exclusive(options: &ExclusiveOptions, errors: &mut Errors) {
    if let Some(name) = &options.name
        && name.value().trim().is_empty()
    {
        errors.spanned(
            name,
            "an empty lock name; name the space the commands share, e.g. `name = \"account\"`, or leave `name` out for the command's own",
        );
    }
}

pub(crate) fn transactional(options: &mut TransactionalOptions, errors: &mut Errors) {
    if let Some(on) = &mut options.rollback_on {
        *on = status::statuses(on, "rollback_on", errors);
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;
    use crate::attr::{self, Leading};

    fn retry_options(tokens: proc_macro2::TokenStream) -> (RetryOptions, Vec<String>) {
        let mut errors = Errors::default();
        let args = attr::parse(
            tokens,
            RetryOptions::ATTRIBUTE,
            Leading::Nothing,
            RetryOptions::SPECS,
            &mut errors,
        );
        let mut options = RetryOptions::from_args(args, &mut errors);
        retry(&mut options, &mut errors);
        (options, errors.messages())
    }

    #[test]
    fn retry_options_left_out_stay_out() {
        let (options, errors) = retry_options(quote!(delay = "10ms"));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(options.max_attempts.is_none());
        assert!(options.jitter.is_none());
        assert!(options.on.is_none());
    }

    #[test]
    fn retry_values_that_cannot_work_are_reported_and_taken_out() {
        let (options, errors) = retry_options(quote!(
            max_attempts = 0,
            backoff = 0.5,
            delay = "2s",
            max_delay = "1s",
            jitter = 2.0,
            on = [Validation, Conflict, Conflict]
        ));
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].starts_with("`max_attempts` counts the first attempt too"));
        assert!(errors[1].starts_with("`backoff` multiplies the delay"));
        assert!(errors[2].starts_with("`max_delay` (1s) is shorter than `delay` (2s)"));
        assert!(errors[3].starts_with("`jitter` is the random fraction"));
        assert!(errors[4].starts_with("`Validation` is never retried"));
        assert_eq!(errors[5], "`Conflict` is listed twice in `on`");
        assert!(options.max_attempts.is_none());
        assert!(options.backoff.is_none());
        assert!(options.jitter.is_none());
        let on: Vec<String> = options
            .on
            .map(|(_, on)| on.iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        assert_eq!(on, ["Conflict"]);
    }

    #[test]
    fn retry_max_attempts_beyond_u32_is_reported() {
        let (options, errors) = retry_options(quote!(max_attempts = 5000000000));
        assert_eq!(errors, [format!("`max_attempts` is at most {}", u32::MAX)]);
        assert!(options.max_attempts.is_none());
    }

    #[test]
    fn cache_options_that_cache_nothing_are_reported() {
        let mut errors = Errors::default();
        let args = attr::parse(
            quote!(ttl = "0s", vary_by = [a, b, a], max_entries = 0),
            CacheOptions::ATTRIBUTE,
            Leading::Nothing,
            CacheOptions::SPECS,
            &mut errors,
        );
        cache(&CacheOptions::from_args(args), &mut errors);
        let errors = errors.messages();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("a `ttl` of zero caches nothing"));
        assert_eq!(errors[1], "`a` is listed twice in `vary_by`");
        assert!(errors[2].starts_with("`max_entries = 0` caches nothing"));
    }
}
