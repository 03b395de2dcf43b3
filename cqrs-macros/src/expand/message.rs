//! `#[derive(Command)]`, `#[derive(Query)]`, `#[derive(Event)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::ast::{MessageInput, MessageKind};
use crate::check;
use crate::errors::Errors;

/// The whole of a message derive: the errors, and the impls.
pub(crate) fn derive_message(input: TokenStream, kind: MessageKind) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let message = MessageInput::parse(input, kind, &mut errors)?;
    check::message(&message, &mut errors);
    let mut out = errors.to_compile_errors();
    out.extend(generate(&message));
    Ok(out)
}

/// The impls of `Message`, of the kind's trait, and the registration.
fn generate(message: &MessageInput) -> TokenStream {
    let MessageInput {
        input,
        kind,
        name,
        output,
        validated,
        partition_key,
    } = message;
    let ident = &input.ident;
    let name = name
        .as_ref()
        .map_or_else(|| ident.to_string(), |n| n.value());
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
    let validate = if *validated {
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
    let output = output.as_ref().map_or_else(|| quote!(()), |t| quote!(#t));
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
            match partition_key {
                // Spanned on the user's field name: a field that does not exist, or whose type
                // is not `Display`, is reported there.
                Some(field) if matches!(input.data, syn::Data::Struct(_)) => {
                    let span = proc_macro2::Span::call_site().located_at(field.span());
                    let value =
                        quote_spanned!(span=> ::std::string::ToString::to_string(&self.#field));
                    quote! {
                        fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                            ::core::option::Option::Some(#value)
                        }
                    }
                }
                _ => TokenStream::new(),
            },
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
