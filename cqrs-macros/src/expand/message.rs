//! `#[derive(Command)]`, `#[derive(Query)]`, `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, LitStr, Type};

use crate::attr::{self, Kind, Leading, opt};
use crate::errors::Errors;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Command,
    Query,
    Event,
}

impl MessageKind {
    fn attribute(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Query => "query",
            MessageKind::Event => "event",
        }
    }
}

pub(crate) fn derive(input: TokenStream, kind: MessageKind) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let mut errors = Errors::default();
    let attribute = kind.attribute();
    let ident = &input.ident;

    if let Data::Union(u) = &input.data {
        // Nothing else is generated: a union cannot be `Clone + Serialize` by derive, so any impl
        // would only add errors about that.
        return Err(syn::Error::new_spanned(
            u.union_token,
            format!(
                "a {attribute} is a struct or an enum, not a union: declare `struct {ident} {{ .. }}` or `enum {ident} {{ .. }}`"
            ),
        ));
    }

    let specs: &[attr::Spec] = match kind {
        MessageKind::Event => &[opt("name", Kind::Str)],
        _ => &[opt("output", Kind::Type), opt("name", Kind::Str)],
    };
    let mut output: Option<Type> = None;
    let mut name: Option<LitStr> = None;
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
                        attr::known_list(specs)
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
    }
    if let Some(n) = &name {
        let value = n.value();
        if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
            errors.spanned(
                n,
                format!(
                    "a {attribute} name is not empty and has no spaces, e.g. \"users.register\""
                ),
            );
        }
    }

    // When the attribute could not be read and gave no output, the output is unknown. Rather
    // than `()`, it becomes `[(); compile_error!(..)]` carrying the attribute's first error: a
    // type rustc knows is erroneous, so a handler returning the output the user meant adds no
    // mismatch error.
    let output = match (&output, attribute_failed, kind) {
        (None, true, MessageKind::Command | MessageKind::Query) => errors.take_first().map(|e| {
            let error = e.to_compile_error();
            quote!([(); #error])
        }),
        (Some(ty), _, _) => Some(quote!(#ty)),
        _ => None,
    };

    let validated = has_validation_rules(&input);
    let name = name.map_or_else(|| ident.to_string(), |n| n.value());
    let expanded = expand(&input, kind, &name, output.as_ref(), validated);
    let mut out = errors.to_compile_errors();
    out.extend(expanded);
    Ok(out)
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

fn expand(
    input: &DeriveInput,
    kind: MessageKind,
    name: &str,
    output: Option<&TokenStream>,
    validated: bool,
) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let p = quote!(::cqrs_core::__private);
    let kind_tokens = match kind {
        MessageKind::Command => quote!(#p::MessageKind::Command),
        MessageKind::Query => quote!(#p::MessageKind::Query),
        MessageKind::Event => quote!(#p::MessageKind::Event),
    };
    let generic = !input.generics.params.is_empty();
    let slot = if generic {
        quote!(#p::generic_slot::<Self>(#kind_tokens))
    } else {
        quote! {
            static __CQRS_SLOT: #p::MessageIndex = #p::MessageIndex::new(#kind_tokens);
            __CQRS_SLOT.get()
        }
    };
    let validate = if validated {
        // Located at the message's name, so rules without `#[derive(Validate)]` are reported
        // there, but resolved at the call site: `self` must keep the hygiene of the generated
        // method when the message is declared by a `macro_rules!` (which then owns the name's
        // span).
        let span = proc_macro2::Span::call_site().located_at(ident.span());
        let check = quote_spanned!(span=> #p::validate_with_validator(self));
        quote! {
            const VALIDATED: ::core::primitive::bool = true;
            fn validate_message(&self) -> #p::Result<(), #p::Error> {
                #check
            }
        }
    } else {
        TokenStream::new()
    };
    let output = output.map_or_else(|| quote!(()), |t| quote!(#t));
    let (kind_trait, kind_body, is_kind, assoc) = match kind {
        MessageKind::Command => (
            quote!(CommandTrait),
            quote!(type Output = #output;),
            quote!(IsCommand),
            quote!(Command),
        ),
        MessageKind::Query => (
            quote!(QueryTrait),
            quote!(type Output = #output;),
            quote!(IsQuery),
            quote!(Query),
        ),
        MessageKind::Event => (
            quote!(EventTrait),
            TokenStream::new(),
            quote!(IsEvent),
            quote!(Event),
        ),
    };
    // `IsCommand` (and the others) are how the handler attributes name a message; the impls are
    // not listed as suggestions when some other type is not a command.
    let kind_impl = quote! {
        #[automatically_derived]
        impl #impl_generics #p::#kind_trait for #ident #ty_generics #where_clause {
            #kind_body
        }
        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl #impl_generics #p::#is_kind for #ident #ty_generics #where_clause {
            type #assoc = Self;
        }
    };
    let register = if generic {
        TokenStream::new()
    } else {
        let constructor = match kind {
            MessageKind::Command => quote!(command),
            MessageKind::Query => quote!(query),
            MessageKind::Event => quote!(event),
        };
        let location = quote_spanned!(ident.span()=> #p::Location::new(::core::file!(), ::core::line!(), ::core::column!()));
        quote! {
            #p::inventory::submit! {
                #p::MessageRegistration::#constructor::<#ident>(#location)
            }
        }
    };
    quote! {
        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #p::Message for #ident #ty_generics #where_clause {
                const NAME: &'static ::core::primitive::str = #name;
                const KIND: #p::MessageKind = #kind_tokens;
                #validate
                #[inline]
                fn __slot() -> ::core::primitive::usize {
                    #slot
                }
            }
            #kind_impl
            #[automatically_derived]
            impl #impl_generics #p::IntoEnvelope for #ident #ty_generics #where_clause {
                type Message = Self;
                #[inline]
                fn into_envelope(self) -> #p::Envelope<Self> {
                    #p::Envelope::new(self)
                }
            }
            #register
        };
    }
}
