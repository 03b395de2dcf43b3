//! `#[authorize(permissions = [..], roles = [..], resource = field, admin_override)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::attr::{Kind, Leading, opt};
use crate::expand::call_site;
use crate::expand::decorator::{Decorator, Generated};

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let specs = [
        opt("permissions", Kind::Strs),
        opt("roles", Kind::Strs),
        opt("resource", Kind::Ident),
        opt("admin_override", Kind::Flag),
    ];
    let decorator = Decorator {
        attribute: "authorize",
        accepts: "AcceptsAuthorize",
        leading: Leading::Nothing,
        specs: &specs,
    };
    decorator.expand(args, input, |args, handler, errors| {
        let p = quote!(::cqrs_core::__private);
        let mut layer = quote!(#p::AuthorizeLayer::new());
        for option in ["permissions", "roles"] {
            let Some(list) = args.strs(option) else {
                continue;
            };
            for s in &list {
                if s.value().trim().is_empty() {
                    errors.spanned(s, format!("an empty string in `{option}` can never match"));
                }
            }
            let method = syn::Ident::new(option, proc_macro2::Span::call_site());
            layer = quote!(#layer.#method(&[#(#list),*]));
        }
        let mut items = TokenStream::new();
        if let Some(field) = args.ident("resource") {
            let message = handler.message();
            // The field access is spanned on the user's field name: a typo reads
            // "no field `ownr` on type `DeleteDocument`" right under it. `message` is not (see
            // `expand::call_site`).
            let message_var = call_site("message");
            let access = quote_spanned!(field.span()=> ::cqrs_core::__private::resource_id(&(*#message_var).#field));
            let name = field.to_string();
            items = quote! {
                fn __cqrs_resource_id(message: &(dyn #p::Any + #p::Send + #p::Sync)) -> #p::Option<#p::String> {
                    let message = message.downcast_ref::<#message>()?;
                    #p::Some(#access)
                }
            };
            layer = quote!(#layer.resource(#p::ResourceField::new(#name, __cqrs_resource_id)));
        }
        if let Some((true, _)) = args.bool("admin_override") {
            layer = quote!(#layer.admin_override());
        }
        Some(Generated {
            items,
            decorator: quote!(#p::Decorator::Authorize(#layer)),
        })
    })
}
