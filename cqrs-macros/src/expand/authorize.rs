//! `#[authorize(permissions = [..], roles = [..], resource = field, admin_override)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ItemStruct;

use crate::ast::AuthorizeOptions;
use crate::attr::{Args, Spec};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};
use crate::expand::tokens::call_site;

impl DecoratorAttribute for AuthorizeOptions {
    const ATTRIBUTE: &'static str = AuthorizeOptions::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsAuthorize";
    const SPECS: &'static [Spec] = AuthorizeOptions::SPECS;

    fn read(args: Args, _errors: &mut Errors) -> Option<Self> {
        Some(AuthorizeOptions::from_args(args))
    }

    fn check(&mut self, _item: &ItemStruct, errors: &mut Errors) {
        check::authorize(self, errors);
    }

    fn generate(&self, handler: &Handler<'_>) -> Generated {
        let p = quote!(::cqrs_core::__private);
        let mut layer = quote!(#p::AuthorizeLayer::new());
        if let Some(list) = &self.permissions {
            layer = quote!(#layer.permissions(&[#(#list),*]));
        }
        if let Some(list) = &self.roles {
            layer = quote!(#layer.roles(&[#(#list),*]));
        }
        let mut items = TokenStream::new();
        if let Some(field) = &self.resource {
            let message = handler.message();
            // The field access is spanned on the user's field name: a typo reads
            // "no field `ownr` on type `DeleteDocument`" right under it. `message` is not (see
            // `tokens::call_site`).
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
        if self.admin_override {
            layer = quote!(#layer.admin_override());
        }
        Generated {
            items,
            decorator: quote!(#p::Decorator::Authorize(#layer)),
        }
    }
}
