//! The parser's behaviour on what users write, right and wrong.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::Ident;

use super::status::statuses;
use super::*;
use crate::errors::Errors;

const SPECS: &[Spec] = &[
    opt("max_attempts", Kind::Int),
    opt("delay", Kind::Duration),
    opt("backoff", Kind::Float),
    opt("on", Kind::Idents),
    opt("admin_override", Kind::Flag),
    opt("output", Kind::Type),
    opt("permissions", Kind::Strs),
    opt("resource", Kind::Ident),
];

fn run(tokens: TokenStream, leading: Leading) -> (Args, Vec<String>) {
    let mut errors = Errors::default();
    let args = parse(tokens, "retry", leading, SPECS, &mut errors);
    (args, errors.messages())
}

#[test]
fn reads_every_kind() {
    let (mut args, errors) = run(
        quote!(max_attempts = 3, delay = "50ms", backoff = 2, on = [Conflict, Timeout], admin_override, output = Option<u64>, permissions = ["a", "b"]),
        Leading::Nothing,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(args.int("max_attempts").map(|(n, _)| n), Some(3));
    assert_eq!(
        args.duration("delay").map(|(d, _)| d),
        Some(Duration::from_millis(50))
    );
    assert!(matches!(args.take("backoff"), Some((_, Value::Float(f, _))) if f == 2.0));
    let on: Vec<String> = args
        .idents("on")
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(on, ["Conflict", "Timeout"]);
    assert_eq!(args.bool("admin_override").map(|(b, _)| b), Some(true));
    assert!(args.ty("output").is_some());
    assert_eq!(args.strs("permissions").map(|s| s.len()), Some(2));
}

#[test]
fn unknown_option_lists_the_known_ones_and_is_still_read() {
    let (mut args, errors) = run(quote!(max_atempts = 5), Leading::Nothing);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(
        "unknown option `max_atempts` for `#[retry]`: did you mean `max_attempts`? The options are `max_attempts`, `delay`"
    ));
    assert!(errors[0].contains("`delay`, `backoff`"));
    assert_eq!(args.int("max_attempts").map(|(n, _)| n), Some(5));

    let (_, errors) = run(quote!(colour = 1), Leading::Nothing);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .starts_with("unknown option `colour` for `#[retry]`; the options are `max_attempts`")
    );
}

#[test]
fn near_misses_are_read_as_meant() {
    let (mut args, errors) = run(
        quote!(delay = 50ms, on = Conflict, permissions = "user:create"),
        Leading::Nothing,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    let (mut quoted, errors) = run(
        quote!(resource = "owner_id", on = ["Conflict", "Timeout"]),
        Leading::Nothing,
    );
    assert_eq!(
        errors,
        [
            "write the field name without quotes: `resource = owner_id`",
            "write the names without quotes: `on = [Conflict, Timeout]`",
        ]
    );
    assert_eq!(
        quoted.ident("resource").map(|i| i.to_string()),
        Some("owner_id".to_owned())
    );
    assert_eq!(quoted.idents("on").map(|on| on.len()), Some(2));
    assert_eq!(
        args.duration("delay").map(|(d, _)| d),
        Some(Duration::from_millis(50))
    );
    assert_eq!(args.idents("on").map(|on| on.len()), Some(1));
    assert_eq!(args.strs("permissions").map(|p| p.len()), Some(1));
}

#[test]
fn duplicate_keeps_the_first() {
    let (mut args, errors) = run(quote!(delay = "1s", delay = "2s"), Leading::Nothing);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("duplicate option `delay`"));
    assert_eq!(
        args.duration("delay").map(|(d, _)| d),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn wrong_kinds_and_missing_values() {
    let cases = [
        (
            quote!(max_attempts = "3"),
            "`max_attempts` takes an integer",
        ),
        (quote!(max_attempts = -1), "`max_attempts` takes an integer"),
        (quote!(max_attempts), "`max_attempts` needs a value"),
        (quote!(max_attempts = ), "`max_attempts` takes an integer"),
        (
            quote!(on = Conflict),
            "`on` takes a list, even of one: `on = [Conflict]`",
        ),
        (
            quote!(delay = 50ms),
            "write the duration as a string: `delay = \"50ms\"`",
        ),
        (
            quote!(delay = 50),
            "a duration is a string with a unit: `delay = \"50ms\"`",
        ),
        (quote!(on = [1, 2]), "`on` takes a list of names"),
        (quote!(on = ["not a name"]), "`on` takes a list of names"),
        (quote!(resource = "2nd"), "`resource` takes a field name"),
        (quote!(backoff = "2"), "`backoff` takes a number"),
        (quote!(output = 5), "`output` takes a type"),
        (quote!(admin_override = 1), "`admin_override` takes nothing"),
        (quote!(delay = "5 minutes"), "did you mean \"5m\"?"),
        (
            quote!(max_attempts = 3 4),
            "unexpected tokens after the value of `max_attempts`",
        ),
        (quote!(Conflict), "expected an option of `#[retry]`"),
    ];
    for (tokens, expected) in cases {
        let written = tokens.to_string();
        let (_, errors) = run(tokens, Leading::Nothing);
        assert_eq!(errors.len(), 1, "{written}: {errors:?}");
        assert!(errors[0].contains(expected), "{written}: {errors:?}");
    }
}

#[test]
fn leading_types_read_a_string_as_the_type_it_names() {
    let (args, errors) = run(quote!("RegisterUser"), Leading::Types("RegisterUser"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("takes the type itself, not a string"));
    assert_eq!(args.positional.len(), 1);
    let (args, errors) = run(quote!(5, max_attempts = 1), Leading::Types("RegisterUser"));
    assert_eq!(errors, ["expected a type, such as `RegisterUser`"]);
    assert!(args.positional.is_empty());
}

#[test]
fn statuses_suggest_the_closest() {
    let mut errors = Errors::default();
    let list = [
        Ident::new("Conflict", Span::call_site()),
        Ident::new("Unavalable", Span::call_site()),
        Ident::new("Conflict", Span::call_site()),
    ];
    let kept = statuses(&list, "on", &mut errors);
    assert_eq!(kept.len(), 1);
    let messages = errors.messages();
    assert!(
        messages[0].starts_with("unknown status `Unavalable` in `on`: did you mean `Unavailable`?")
    );
    assert_eq!(messages[1], "`Conflict` is listed twice in `on`");
}

#[test]
fn leading_types_then_options() {
    let (mut args, errors) = run(
        quote!(RegisterUser, max_attempts = 2),
        Leading::Types("RegisterUser"),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(args.positional.len(), 1);
    assert_eq!(args.int("max_attempts").map(|(n, _)| n), Some(2));
}

#[test]
fn reports_every_mistake_and_never_panics() {
    let (_, errors) = run(
        quote!(max_atempts = 1, delay = "x", on = [Nope]),
        Leading::Nothing,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    for tokens in [
        quote!(= = =),
        quote!(,,,),
        quote!(max_attempts = , delay),
        quote!(on = [Conflict,, Timeout]),
        quote!(max_attempts == 3),
        quote!("text" "more"),
        quote!(max_attempts = 99999999999999999999999),
        quote!(output = ),
        quote!({ a }[b](c)),
    ] {
        for leading in [
            Leading::Nothing,
            Leading::Types("RegisterUser"),
            Leading::Str("\"2s\""),
        ] {
            let (_, errors) = run(tokens.clone(), leading);
            assert!(!errors.is_empty(), "{tokens}");
        }
    }
}
