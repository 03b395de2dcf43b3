//! `#[exclusive(key = field, name = "..")]` on command handlers: the field's reader and the
//! lock space, registered as an `ExclusiveLayer` (the runtime owns the waiting, the lease and
//! the backend).

use quote::{quote, quote_spanned};
use syn::ItemStruct;

use crate::ast::ExclusiveOptions;
use crate::attr::{Args, Spec};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};
use crate::expand::tokens::call_site;

impl DecoratorAttribute for ExclusiveOptions {
    const ATTRIBUTE: &'static str = ExclusiveOptions::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsExclusive";
    const SPECS: &'static [Spec] = ExclusiveOptions::SPECS;

    fn read(args: Args, errors: &mut Errors) -> Option<Self> {
        ExclusiveOptions::from_args(args, errors)
    }

    fn check(&mut self, _item: &ItemStruct, errors: &mut Errors) {
        check::exclusive(self, errors);
    }

    fn generate(&self, handler: &Handler<'_>) -> Generated {
        let p = quote!(::cqrs_core::__private);
        let message = handler.message();
        let field = &self.key;
        // Spanned on the user's field name: a typo reads "no field `acount` on type
        // `Withdraw`" right under it, and a field that cannot be a key says so there too.
        let message_var = call_site("message");
        let access = quote_spanned!(field.span()=> #p::exclusive_key(&(*#message_var).#field));
        let field_name = field.to_string();
        let mut layer = quote!(#p::ExclusiveLayer::new(#field_name, __cqrs_exclusive_key));
        if let Some(name) = &self.name {
            layer = quote!(#layer.name(#name));
        }
        Generated {
            items: quote! {
                fn __cqrs_exclusive_key(message: &(dyn #p::Any + #p::Send + #p::Sync)) -> #p::Option<#p::String> {
                    let message = message.downcast_ref::<#message>()?;
                    #access
                }
            },
            decorator: quote!(#p::Decorator::Exclusive(#layer)),
        }
    }
}
