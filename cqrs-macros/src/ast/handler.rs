//! A handler attribute (`#[command_handler(C, ..)]` and its siblings) and the struct under it.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use syn::{ItemStruct, LitStr, Member, Type};

use crate::attr::{self, Kind, Leading, Positional, QueryTarget, Spec, opt};
use crate::errors::Errors;

/// Which handler attribute.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandlerKind {
    Command,
    Query,
    Event,
}

impl HandlerKind {
    /// The attribute's name, as written in `#[name(..)]`.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            HandlerKind::Command => "command_handler",
            HandlerKind::Query => "query_handler",
            HandlerKind::Event => "event_handler",
        }
    }

    /// What it handles, in prose.
    pub(crate) fn message(self) -> &'static str {
        match self {
            HandlerKind::Command => "command",
            HandlerKind::Query => "query",
            HandlerKind::Event => "event",
        }
    }

    /// A message of this kind, for the examples in error messages.
    pub(crate) fn example(self) -> &'static str {
        match self {
            HandlerKind::Command => "RegisterUser",
            HandlerKind::Query => "GetUser",
            HandlerKind::Event => "UserRegistered",
        }
    }

    fn specs(self) -> &'static [Spec] {
        const COMMAND: &[Spec] = &[
            opt("timeout", Kind::Duration),
            opt("invalidates", Kind::Targets),
            opt("reads_queries", Kind::Str),
            opt("emits", Kind::Types),
            opt("sends", Kind::Types),
        ];
        const QUERY: &[Spec] = &[opt("timeout", Kind::Duration)];
        const EVENT: &[Spec] = &[
            opt("timeout", Kind::Duration),
            opt("sends", Kind::Types),
            opt("group", Kind::Str),
        ];
        match self {
            HandlerKind::Command => COMMAND,
            HandlerKind::Query => QUERY,
            HandlerKind::Event => EVENT,
        }
    }
}

/// The message a handler attribute names.
pub(crate) enum Message {
    Named(Box<Type>),
    /// Not named: the error becomes part of the message type (`[(); compile_error!(..)]`, a
    /// type rustc knows is erroneous), so the code that depends on it adds no errors.
    Missing(syn::Error),
}

/// The arguments of a handler attribute.
pub(crate) struct HandlerAttr {
    pub(crate) kind: HandlerKind,
    pub(crate) message: Message,
    pub(crate) timeout: Option<(Duration, Span)>,
    /// The cached queries dropped when the command succeeds (all their answers, or those the
    /// field mapping names).
    pub(crate) invalidates: Vec<QueryTarget>,
    /// The events the handler says it emits (for `describe()`).
    pub(crate) emits: Vec<Type>,
    /// The commands the handler says it sends (for `describe()`).
    pub(crate) sends: Vec<Type>,
    /// Why a command handler reads the query side.
    pub(crate) reads_queries: Option<LitStr>,
    /// The consumer group of an event handler on a broker.
    pub(crate) group: Option<LitStr>,
}

impl HandlerAttr {
    pub(crate) fn parse(args: TokenStream, kind: HandlerKind, errors: &mut Errors) -> Self {
        let mut args = attr::parse(
            args,
            kind.attribute(),
            Leading::Types(kind.example()),
            kind.specs(),
            errors,
        );
        let message = message_type(&args.positional, kind, errors);
        HandlerAttr {
            kind,
            message,
            timeout: args.duration("timeout"),
            invalidates: args.targets("invalidates").unwrap_or_default(),
            reads_queries: args.str("reads_queries"),
            emits: args.types("emits").unwrap_or_default(),
            sends: args.types("sends").unwrap_or_default(),
            group: args.str("group"),
        }
    }
}

fn message_type(positional: &[Positional], kind: HandlerKind, errors: &mut Errors) -> Message {
    let attribute = kind.attribute();
    let mut types = positional.iter().filter_map(|p| match p {
        Positional::Type(t) => Some(&**t),
        Positional::Str(_) => None,
    });
    let Some(first) = types.next() else {
        return Message::Missing(syn::Error::new(
            Span::call_site(),
            format!(
                "`#[{attribute}]` needs the {} it handles: `#[{attribute}({})]`",
                kind.message(),
                kind.example()
            ),
        ));
    };
    for extra in types {
        errors.spanned(
            extra,
            format!(
                "`#[{attribute}]` handles exactly one {}; this is a second one: declare another handler struct for it",
                kind.message()
            ),
        );
    }
    // A message is a struct or an enum: a path (`RegisterUser`, `Import<Csv>`). Anything else
    // (`A + B`, `&T`, `_`) cannot be one, and written into the generated code it would not even
    // parse there (`<A + as ..>`), burying this error under rustc's.
    if !matches!(first, Type::Path(_)) {
        return Message::Missing(syn::Error::new_spanned(
            first,
            format!(
                "expected the {} type, such as `{}`",
                kind.message(),
                kind.example()
            ),
        ));
    }
    Message::Named(Box::new(first.clone()))
}

/// The handler struct, its `#[inject(..)]` attributes taken off, and its fields: the
/// dependencies the bus injects when it builds the handler.
pub(crate) struct HandlerStruct {
    pub(crate) item: ItemStruct,
    /// One per field, in order.
    pub(crate) dependencies: Vec<Dependency>,
}

/// A field of a handler struct.
pub(crate) struct Dependency {
    /// `users`, or `0` in a tuple struct.
    pub(crate) member: Member,
    /// `#[inject(default)]`: `Default` when the bus has no value of the field's type.
    pub(crate) or_default: bool,
    /// Set by the checks when the field's type cannot be shared between threads: the error
    /// becomes part of the field's type rather than a separate report (see
    /// `expand::handler`).
    pub(crate) unshareable: Option<syn::Error>,
}

impl HandlerStruct {
    pub(crate) fn parse(mut item: ItemStruct, errors: &mut Errors) -> Self {
        let dependencies = item
            .fields
            .iter_mut()
            .enumerate()
            .map(|(index, field)| {
                let mut or_default = false;
                field.attrs.retain(|a| {
                    if !a.path().is_ident("inject") {
                        return true;
                    }
                    match inject_options(a) {
                        Ok(()) => or_default = true,
                        Err(e) => errors.push(e),
                    }
                    false
                });
                let member = match &field.ident {
                    Some(ident) => Member::Named(ident.clone()),
                    None => Member::Unnamed(syn::Index::from(index)),
                };
                Dependency {
                    member,
                    or_default,
                    unshareable: None,
                }
            })
            .collect();
        HandlerStruct { item, dependencies }
    }
}

/// `#[inject(default)]` is the only form.
fn inject_options(attr: &syn::Attribute) -> syn::Result<()> {
    let only = "its only option is `default`: `#[inject(default)]` falls back to `Default` when the bus has no value of the field's type";
    let list = match &attr.meta {
        syn::Meta::List(list) => list,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`#[inject]` needs an option; {only}"),
            ));
        }
    };
    list.parse_args_with(|input: syn::parse::ParseStream<'_>| {
        if input.is_empty() {
            return Err(syn::Error::new(
                list.delimiter.span().join(),
                format!("`#[inject]` needs an option; {only}"),
            ));
        }
        let word: syn::Ident = input.parse()?;
        if word != "default" {
            return Err(syn::Error::new(
                word.span(),
                format!("unknown option `{word}` for `#[inject]`; {only}"),
            ));
        }
        if !input.is_empty() {
            return Err(input.error(format!("unexpected tokens after `default`; {only}")));
        }
        Ok(())
    })
}
