//! Parsing attribute arguments: `Type, key = value, flag, list = [a, b]`.
//!
//! Every attribute lists its options with their kinds; unknown options, duplicates and values of
//! the wrong kind are reported on the offending token, all of them in one pass.

use std::collections::BTreeMap;
use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Ident, LitBool, LitFloat, LitInt, LitStr, Token, Type};

use crate::duration;
use crate::errors::Errors;

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
    /// `invalidates = [GetUser, ListUsers]`.
    Types,
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
    Strs(Vec<LitStr>),
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

/// Parses `tokens` as the arguments of `#[attribute(..)]`.
pub(crate) fn parse(
    tokens: TokenStream,
    attribute: &str,
    leading: Leading,
    specs: &[Spec],
    errors: &mut Errors,
) -> Args {
    let parser = |input: ParseStream<'_>| -> syn::Result<Args> {
        let mut args = Args::default();
        while !input.is_empty() {
            parse_one(input, attribute, leading, specs, &mut args, errors);
            if input.is_empty() {
                break;
            }
            if let Err(e) = input.parse::<Token![,]>() {
                errors.push(syn::Error::new(
                    e.span(),
                    format!("expected `,` between the arguments of `#[{attribute}]`"),
                ));
                skip_to_comma(input);
                let _ = input.parse::<Option<Token![,]>>();
            }
        }
        Ok(args)
    };
    match parser.parse2(tokens) {
        Ok(args) => args,
        Err(e) => {
            errors.push(e);
            Args::default()
        }
    }
}

fn parse_one(
    input: ParseStream<'_>,
    attribute: &str,
    leading: Leading,
    specs: &[Spec],
    args: &mut Args,
    errors: &mut Errors,
) {
    // `name = ..`, or a known option's bare name (a flag, or an option missing its value).
    let is_option = input.peek(Ident)
        && (input.peek2(Token![=]) || {
            let fork = input.fork();
            let name = fork.parse::<Ident>().ok();
            let ends = fork.is_empty() || fork.peek(Token![,]);
            ends && name.is_some_and(|n| specs.iter().any(|s| n == s.name))
        });
    if !is_option {
        match leading {
            Leading::Types(example) if input.peek(LitStr) => {
                // `#[command_handler("RegisterUser")]`: say so, and read the type it names.
                let Ok(lit) = input.parse::<LitStr>() else {
                    return;
                };
                let written = lit.value();
                errors.spanned(
                    &lit,
                    format!("`#[{attribute}]` takes the type itself, not a string: `#[{attribute}({written})]`"),
                );
                match lit.parse::<Type>() {
                    Ok(ty) => args.positional.push(Positional::Type(Box::new(ty))),
                    Err(_) => errors.spanned(&lit, format!("expected a type, such as `{example}`")),
                }
            }
            Leading::Types(example) => {
                let fork = input.fork();
                match input.parse::<Type>() {
                    Ok(ty) => args.positional.push(Positional::Type(Box::new(ty))),
                    Err(_) => {
                        let tokens = collect_to_comma(&fork);
                        let message = format!("expected a type, such as `{example}`");
                        if tokens.is_empty() {
                            errors.at(fork.span(), message);
                        } else {
                            errors.spanned(tokens, message);
                        }
                        skip_to_comma(input);
                    }
                }
            }
            Leading::Str(_) if input.peek(LitStr) => match input.parse::<LitStr>() {
                Ok(s) => args.positional.push(Positional::Str(s)),
                Err(e) => errors.push(e),
            },
            Leading::Str(_) if input.peek(LitInt) || input.peek(LitFloat) => {
                // `#[timeout(2s)]`: say so, and read it as the string it should be.
                let Ok(token) = input.parse::<TokenTree>() else {
                    return;
                };
                let text = token.to_string();
                errors.spanned(
                    &token,
                    format!("write it as a string: `#[{attribute}(\"{text}\")]`"),
                );
                args.positional
                    .push(Positional::Str(LitStr::new(&text, token.span())));
            }
            Leading::Str(example) if specs.is_empty() => {
                let tokens = collect_to_comma(input);
                errors.spanned(
                    &tokens,
                    format!("`#[{attribute}]` takes a string: `#[{attribute}({example})]`"),
                );
            }
            _ => {
                let known = known_list(specs);
                let what = match input.parse::<TokenTree>() {
                    Ok(tt) => tt,
                    Err(e) => {
                        errors.push(e);
                        return;
                    }
                };
                errors.spanned(
                    &what,
                    format!("expected an option of `#[{attribute}]`: one of {known}"),
                );
                skip_to_comma(input);
            }
        }
        return;
    }
    let Ok(name) = input.parse::<Ident>() else {
        skip_to_comma(input);
        return;
    };
    let has_value = input.parse::<Option<Token![=]>>().ok().flatten().is_some();
    let Some(spec) = specs.iter().find(|s| name == s.name) else {
        let guess = closest(&name.to_string(), specs.iter().map(|s| s.name));
        let place = format!("for `#[{attribute}]`");
        errors.spanned(
            &name,
            unknown("option", &name, &place, guess, &known_list(specs)),
        );
        // Read the value as the option it most likely is, so that what depends on the option
        // does not add errors of its own.
        let guess = guess.and_then(|c| specs.iter().find(|s| s.name == c));
        match guess {
            Some(spec) if has_value => {
                if let Some(value) = parse_value(input, spec, &mut Errors::default()) {
                    args.options
                        .entry(spec.name)
                        .or_insert((name.span(), value));
                }
            }
            _ if has_value => skip_to_comma(input),
            _ => {}
        }
        return;
    };
    let value = if has_value {
        parse_value(input, spec, errors)
    } else if spec.kind == Kind::Flag {
        Some(Value::Bool(true, name.span()))
    } else {
        errors.spanned(
            &name,
            format!(
                "`{}` needs a value: `{} = ..`, {}",
                spec.name,
                spec.name,
                spec.kind.expected()
            ),
        );
        None
    };
    let Some(value) = value else {
        return;
    };
    if args.options.contains_key(spec.name) {
        errors.spanned(
            &name,
            format!(
                "duplicate option `{}`: it is already given; keep one",
                spec.name
            ),
        );
        return;
    }
    args.options.insert(spec.name, (name.span(), value));
}

fn parse_value(input: ParseStream<'_>, spec: &Spec, errors: &mut Errors) -> Option<Value> {
    if let Some(value) = near_miss(input, spec, errors) {
        return value;
    }
    let fork = input.fork();
    let parsed: syn::Result<Value> = (|| {
        Ok(match spec.kind {
            Kind::Type => Value::Type(Box::new(input.parse()?)),
            Kind::Str => Value::Str(input.parse()?),
            Kind::Duration => {
                let lit: LitStr = input.parse()?;
                match duration::parse(&lit.value()) {
                    Ok(d) => Value::Duration(d, lit.span()),
                    Err(message) => return Err(syn::Error::new(lit.span(), message)),
                }
            }
            Kind::Bool | Kind::Flag => {
                let b: LitBool = input.parse()?;
                Value::Bool(b.value, b.span)
            }
            Kind::Int => {
                let i: LitInt = input.parse()?;
                Value::Int(i.base10_parse()?, i.span())
            }
            Kind::Float => number(input)?,
            Kind::BoolOrFloat => {
                if input.peek(LitBool) {
                    let b: LitBool = input.parse()?;
                    Value::Bool(b.value, b.span)
                } else {
                    number(input)?
                }
            }
            Kind::Ident => Value::Ident(input.parse()?),
            Kind::Idents => {
                let span = input.span();
                Value::Idents(bracketed(input, |i| i.parse::<Ident>())?, span)
            }
            Kind::Types => Value::Types(bracketed(input, |i| i.parse::<Type>())?),
            Kind::Strs => Value::Strs(bracketed(input, |i| i.parse::<LitStr>())?),
        })
    })();
    match parsed {
        Ok(value) if input.is_empty() || input.peek(Token![,]) => Some(value),
        Ok(_) => {
            let extra = collect_to_comma(input);
            errors.spanned(
                extra,
                format!("unexpected tokens after the value of `{}`", spec.name),
            );
            None
        }
        Err(e) => {
            if spec.kind == Kind::Duration && fork.peek(LitStr) {
                errors.push(e);
            } else {
                let message = format!("`{}` takes {}", spec.name, spec.kind.expected());
                let tokens = collect_to_comma(&fork);
                if tokens.is_empty() {
                    errors.at(fork.span(), message);
                } else {
                    errors.spanned(tokens, message);
                }
            }
            skip_to_comma(input);
            None
        }
    }
}

/// Values written almost right: a duration without quotes (`ttl = 5m`), a list without
/// brackets (`on = Conflict`). Reported with the fix, and read as meant, so that nothing that
/// depends on the option fails too. `None` when the value is not one of these.
fn near_miss(input: ParseStream<'_>, spec: &Spec, errors: &mut Errors) -> Option<Option<Value>> {
    let name = spec.name;
    let ends = |fork: &syn::parse::ParseBuffer<'_>| fork.is_empty() || fork.peek(Token![,]);
    match spec.kind {
        Kind::Duration if input.peek(LitInt) || input.peek(LitFloat) => {
            let fork = input.fork();
            let token = fork.parse::<TokenTree>().ok()?;
            if !ends(&fork) {
                return None;
            }
            input.parse::<TokenTree>().ok()?;
            let text = token.to_string();
            let parsed = duration::parse(&text);
            let message = match &parsed {
                Ok(_) => format!("write the duration as a string: `{name} = \"{text}\"`"),
                Err(_) if text.chars().all(|c| c.is_ascii_digit()) => format!(
                    "a duration is a string with a unit: `{name} = \"{text}ms\"`, `\"{text}s\"`, .."
                ),
                Err(problem) => problem.clone(),
            };
            errors.spanned(&token, message);
            Some(parsed.ok().map(|d| Value::Duration(d, token.span())))
        }
        Kind::Ident if input.peek(LitStr) => {
            // `resource = "owner_id"`: a field is named, not quoted.
            let fork = input.fork();
            let lit = fork.parse::<LitStr>().ok()?;
            if !ends(&fork) {
                return None;
            }
            input.parse::<LitStr>().ok()?;
            let written = lit.value();
            let ident = syn::parse_str::<Ident>(&written).ok().map(|mut i| {
                i.set_span(lit.span());
                i
            });
            let message = match &ident {
                Some(_) => format!("write the field name without quotes: `{name} = {written}`"),
                None => format!("`{name}` takes {}", spec.kind.expected()),
            };
            errors.spanned(&lit, message);
            Some(ident.map(Value::Ident))
        }
        Kind::Idents if input.peek(syn::token::Bracket) => {
            // `vary_by = ["user_id"]`: names are written without quotes.
            let fork = input.fork();
            let span = fork.span();
            let strings = bracketed(&fork, |i| i.parse::<LitStr>()).ok()?;
            if strings.is_empty() || !ends(&fork) {
                return None;
            }
            let group = input.parse::<TokenTree>().ok()?;
            let names: Option<Vec<Ident>> = strings
                .iter()
                .map(|s| {
                    syn::parse_str::<Ident>(&s.value()).ok().map(|mut i| {
                        i.set_span(s.span());
                        i
                    })
                })
                .collect();
            let message = match &names {
                Some(names) => {
                    let list: Vec<String> = names.iter().map(ToString::to_string).collect();
                    format!(
                        "write the names without quotes: `{name} = [{}]`",
                        list.join(", ")
                    )
                }
                None => format!("`{name}` takes {}", spec.kind.expected()),
            };
            errors.spanned(&group, message);
            Some(names.map(|n| Value::Idents(n, span)))
        }
        Kind::Idents | Kind::Types | Kind::Strs if !input.peek(syn::token::Bracket) => {
            let fork = input.fork();
            let value = match spec.kind {
                Kind::Idents => fork
                    .parse::<Ident>()
                    .ok()
                    .map(|i| Value::Idents(vec![i], fork.span())),
                Kind::Types => fork.parse::<Type>().ok().map(|t| Value::Types(vec![t])),
                _ => fork.parse::<LitStr>().ok().map(|s| Value::Strs(vec![s])),
            }?;
            if !ends(&fork) {
                return None;
            }
            let written = collect_to_comma(input);
            errors.spanned(
                &written,
                format!("`{name}` takes a list, even of one: `{name} = [{written}]`"),
            );
            Some(Some(value))
        }
        _ => None,
    }
}

fn number(input: ParseStream<'_>) -> syn::Result<Value> {
    if input.peek(LitFloat) {
        let f: LitFloat = input.parse()?;
        Ok(Value::Float(f.base10_parse()?, f.span()))
    } else {
        let i: LitInt = input.parse()?;
        Ok(Value::Float(i.base10_parse::<u64>()? as f64, i.span()))
    }
}

fn bracketed<T>(
    input: ParseStream<'_>,
    item: fn(ParseStream<'_>) -> syn::Result<T>,
) -> syn::Result<Vec<T>> {
    // The list is parsed on its own, so that a bad item is an error about the list rather than
    // tokens left over in the whole attribute.
    let group = match input.parse::<TokenTree>()? {
        TokenTree::Group(g) if g.delimiter() == proc_macro2::Delimiter::Bracket => g,
        other => return Err(syn::Error::new(other.span(), "expected `[`")),
    };
    let list =
        |content: ParseStream<'_>| Punctuated::<T, Token![,]>::parse_terminated_with(content, item);
    Ok(list.parse2(group.stream())?.into_iter().collect())
}

fn collect_to_comma(input: ParseStream<'_>) -> TokenStream {
    let mut out = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        match input.parse::<TokenTree>() {
            Ok(tt) => out.extend([tt]),
            Err(_) => break,
        }
    }
    out
}

fn skip_to_comma(input: ParseStream<'_>) {
    collect_to_comma(input);
}

pub(crate) fn known_list(specs: &[Spec]) -> String {
    let names: Vec<String> = specs.iter().map(|s| format!("`{}`", s.name)).collect();
    names.join(", ")
}

/// The known name closest to a misspelt one, if it is close (edit distance at most 2, ignoring
/// case).
pub(crate) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (distance(&name, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// "unknown option `x` for `#[retry]`: did you mean `y`? The options are ..", where `place`
/// is "for `#[retry]`".
pub(crate) fn unknown(
    what: &str,
    name: &dyn std::fmt::Display,
    place: &str,
    guess: Option<&str>,
    known: &str,
) -> String {
    let plural = if what.ends_with('s') {
        format!("{what}es")
    } else {
        format!("{what}s")
    };
    match guess {
        Some(guess) => format!(
            "unknown {what} `{name}` {place}: did you mean `{guess}`? The {plural} are {known}"
        ),
        None => format!("unknown {what} `{name}` {place}; the {plural} are {known}"),
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The statuses `on = [..]` and `rollback_on = [..]` may name.
pub(crate) const STATUSES: &[&str] = &[
    "Validation",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Timeout",
    "Unavailable",
    "Internal",
    "NoHandler",
];

/// Checks a list of statuses, reporting unknown ones on their token.
pub(crate) fn statuses(list: &[Ident], option: &str, errors: &mut Errors) -> Vec<Ident> {
    let mut seen = Vec::<String>::new();
    let mut out = Vec::new();
    for status in list {
        let name = status.to_string();
        if !STATUSES.contains(&name.as_str()) {
            let all: Vec<String> = STATUSES.iter().map(|s| format!("`{s}`")).collect();
            let guess = closest(&name, STATUSES.iter().copied());
            errors.spanned(
                status,
                unknown(
                    "status",
                    &name,
                    &format!("in `{option}`"),
                    guess,
                    &all.join(", "),
                ),
            );
        } else if seen.contains(&name) {
            errors.spanned(status, format!("`{name}` is listed twice in `{option}`"));
        } else {
            seen.push(name);
            out.push(status.clone());
        }
    }
    out
}

/// The tokens of a `Duration` constant.
pub(crate) fn duration_tokens(d: Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote::quote!(::cqrs_core::__private::Duration::new(#secs, #nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

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
            errors[0].starts_with(
                "unknown option `colour` for `#[retry]`; the options are `max_attempts`"
            )
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
            messages[0]
                .starts_with("unknown status `Unavalable` in `on`: did you mean `Unavailable`?")
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
}
