//! The parser of attribute arguments, with the near misses it reads as meant.

use proc_macro2::{TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Ident, LitBool, LitFloat, LitInt, LitStr, Token, Type};

use super::suggest::{closest, known_list, unknown};
use super::{Args, Kind, Leading, Positional, QueryTarget, Spec, Value};
use crate::duration;
use crate::errors::Errors;

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
            Kind::Targets => Value::Targets(bracketed(input, target)?),
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
            // A bad duration string, or a bad field mapping inside `invalidates = [..]`: the
            // precise error, on the precise token, says more than "takes a list of ..".
            if (spec.kind == Kind::Duration && fork.peek(LitStr))
                || (spec.kind == Kind::Targets && fork.peek(syn::token::Bracket))
            {
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
        Kind::Idents | Kind::Types | Kind::Targets | Kind::Strs
            if !input.peek(syn::token::Bracket) =>
        {
            let fork = input.fork();
            let value = match spec.kind {
                Kind::Idents => fork
                    .parse::<Ident>()
                    .ok()
                    .map(|i| Value::Idents(vec![i], fork.span())),
                Kind::Types => fork.parse::<Type>().ok().map(|t| Value::Types(vec![t])),
                Kind::Targets => target(&fork).ok().map(|t| Value::Targets(vec![t])),
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

/// `GetUser` or `GetUser(id = user_id, ..)`: the type is read up to the parentheses (as a
/// type, `GetUser(..)` would be a function-like path).
fn target(input: ParseStream<'_>) -> syn::Result<QueryTarget> {
    let mut written = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) && !input.peek(syn::token::Paren) {
        written.extend([input.parse::<TokenTree>()?]);
    }
    let query: Type = syn::parse2(written.clone()).map_err(|_| {
        let message = "expected a query, such as `GetUser` or `GetUser(id = user_id)`";
        if written.is_empty() {
            syn::Error::new(input.span(), message)
        } else {
            syn::Error::new_spanned(&written, message)
        }
    })?;
    if !input.peek(syn::token::Paren) {
        return Ok(QueryTarget {
            query,
            fields: Vec::new(),
        });
    }
    let TokenTree::Group(group) = input.parse::<TokenTree>()? else {
        return Err(input.error("expected `(`"));
    };
    let pair = |content: ParseStream<'_>| -> syn::Result<(Ident, Ident)> {
        let field: Ident = content.parse()?;
        if !content.peek(Token![=]) {
            return Err(syn::Error::new(
                field.span(),
                format!("map the query's field to the command's: `{field} = command_field`"),
            ));
        }
        content.parse::<Token![=]>()?;
        let command_field: Ident = content.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected the command's field that holds the query's `{field}`"),
            )
        })?;
        Ok((field, command_field))
    };
    let list = |content: ParseStream<'_>| {
        Punctuated::<(Ident, Ident), Token![,]>::parse_terminated_with(content, pair)
    };
    let fields: Vec<(Ident, Ident)> = list.parse2(group.stream())?.into_iter().collect();
    if fields.is_empty() {
        return Err(syn::Error::new(
            group.span(),
            "name the query's fields and the command's fields that hold them, `(id = user_id)`, or drop the parentheses to invalidate every answer",
        ));
    }
    for (i, (field, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(f, _)| f == field) {
            return Err(syn::Error::new(
                field.span(),
                format!("`{field}` is mapped twice; keep one"),
            ));
        }
    }
    Ok(QueryTarget { query, fields })
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
