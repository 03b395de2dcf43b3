//! The input of `#[derive(Command)]`, `#[derive(Query)]` and `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, LitStr, Type};

use crate::attr::{self, Kind, Leading, Spec, opt};
use crate::errors::Errors;

/// Which derive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Command,
    Query,
    Event,
}

impl MessageKind {
    /// The attribute holding its options: `#[command(..)]`.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Query => "query",
            MessageKind::Event => "event",
        }
    }

    fn specs(self) -> &'static [Spec] {
        const EVENT: &[Spec] = &[opt("name", Kind::Str), opt("partition_key", Kind::Ident)];
        const OTHER: &[Spec] = &[opt("output", Kind::Type), opt("name", Kind::Str)];
        match self {
            MessageKind::Event => EVENT,
            MessageKind::Command | MessageKind::Query => OTHER,
        }
    }
}

/// A message type and its options.
pub(crate) struct MessageInput {
    pub(crate) input: DeriveInput,
    pub(crate) kind: MessageKind,
    /// `name = ".."`; the type's name when not given.
    pub(crate) name: Option<LitStr>,
    /// The type of `Output` (commands and queries): `()` when not given.
    pub(crate) output: Option<TokenStream>,
    /// Whether it carries `validator` rules (`#[validate(..)]` on it or on a field).
    pub(crate) validated: bool,
    /// `partition_key = field` (events): the field whose value keeps the order of its events.
    pub(crate) partition_key: Option<syn::Ident>,
}

impl MessageInput {
    /// Reads the derive's input. A union is an error on its own: nothing is generated for it,
    /// since a union cannot be `Clone + Serialize` by derive and any impl would only add errors
    /// about that.
    pub(crate) fn parse(
        input: TokenStream,
        kind: MessageKind,
        errors: &mut Errors,
    ) -> syn::Result<Self> {
        let input: DeriveInput = syn::parse2(input)?;
        let attribute = kind.attribute();
        if let Data::Union(u) = &input.data {
            let ident = &input.ident;
            return Err(syn::Error::new_spanned(
                u.union_token,
                format!(
                    "a {attribute} is a struct or an enum, not a union: declare `struct {ident} {{ .. }}` or `enum {ident} {{ .. }}`"
                ),
            ));
        }
        let specs = kind.specs();
        let mut output: Option<Type> = None;
        let mut name: Option<LitStr> = None;
        let mut partition_key: Option<syn::Ident> = None;
        let mut seen_attr = false;
        let mut attribute_failed = false;
        for a in &input.attrs {
            if !a.path().is_ident(attribute) {
                continue;
            }
            if seen_attr {
                errors.spanned(
                    a.path(),
                    format!("duplicate `#[{attribute}(..)]`: put every option in one"),
                );
                continue;
            }
            seen_attr = true;
            let tokens = match &a.meta {
                syn::Meta::List(list) => list.tokens.clone(),
                other => {
                    errors.spanned(
                        other,
                        format!(
                            "expected `#[{attribute}(option = value, ..)]`, with options {}",
                            attr::suggest::known_list(specs)
                        ),
                    );
                    attribute_failed = true;
                    continue;
                }
            };
            let mut attribute_errors = Errors::default();
            let mut args = attr::parse(
                tokens,
                attribute,
                Leading::Nothing,
                specs,
                &mut attribute_errors,
            );
            attribute_failed |= attribute_errors.any();
            errors.extend(attribute_errors);
            output = args.ty("output");
            name = args.str("name");
            partition_key = args.ident("partition_key");
        }
        // When the attribute could not be read and gave no output, the output is unknown.
        // Rather than `()`, it becomes `[(); compile_error!(..)]` carrying the attribute's first
        // error: a type rustc knows is erroneous, so a handler returning the output the user
        // meant adds no mismatch error.
        let output = match (output, attribute_failed, kind) {
            (None, true, MessageKind::Command | MessageKind::Query) => {
                errors.take_first().map(|e| {
                    let error = e.to_compile_error();
                    quote!([(); #error])
                })
            }
            (Some(ty), _, _) => Some(quote!(#ty)),
            _ => None,
        };
        let validated = has_validation_rules(&input);
        Ok(MessageInput {
            input,
            kind,
            name,
            output,
            validated,
            partition_key,
        })
    }
}

/// Whether the message carries `validator` rules (`#[validate(..)]` on it or on a field).
fn has_validation_rules(input: &DeriveInput) -> bool {
    let on = |attrs: &[syn::Attribute]| attrs.iter().any(|a| a.path().is_ident("validate"));
    if on(&input.attrs) {
        return true;
    }
    match &input.data {
        Data::Struct(s) => s.fields.iter().any(|f| on(&f.attrs)),
        Data::Enum(e) => e
            .variants
            .iter()
            .any(|v| on(&v.attrs) || v.fields.iter().any(|f| on(&f.attrs))),
        Data::Union(_) => false,
    }
}
