//! What every decorator attribute shares: parse its options, check the struct it is on, and
//! register its configuration for that handler type (the runtime does the rest).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{Ident, ItemStruct};

use crate::attr::{self, Args, Leading, Spec};
use crate::errors::Errors;
use crate::item::{self, Target};

/// What a decorator generates besides the registration.
pub(crate) struct Generated {
    /// Helper items (key functions, field readers).
    pub(crate) items: TokenStream,
    /// An expression of type `Decorator`.
    pub(crate) decorator: TokenStream,
}

/// A decorator attribute.
pub(crate) struct Decorator<'a> {
    /// Its name, as written in `#[name(..)]`.
    pub(crate) attribute: &'static str,
    /// The `__private` trait the handler attributes implement for the structs it may go on.
    pub(crate) accepts: &'static str,
    /// What its arguments start with.
    pub(crate) leading: Leading,
    /// Its options.
    pub(crate) specs: &'a [Spec],
}

impl Decorator<'_> {
    pub(crate) fn expand(
        &self,
        args: TokenStream,
        input: TokenStream,
        build: impl FnOnce(&mut Args, &Handler<'_>, &mut Errors) -> Option<Generated>,
    ) -> TokenStream {
        let mut errors = Errors::default();
        let mut args = attr::parse(args, self.attribute, self.leading, self.specs, &mut errors);
        let mut item = match item::target(input, self.attribute, &mut errors) {
            Target::Struct(item) => item,
            Target::Rejected(item) => {
                let mut out = errors.to_compile_errors();
                out.extend(item);
                return out;
            }
        };
        item::remove_clashing(&mut item, self.attribute, &mut errors);
        let handler = Handler {
            item: &item,
            accepts: self.accepts,
        };
        let generated = build(&mut args, &handler, &mut errors);
        let mut out = errors.to_compile_errors();
        out.extend(item.to_token_stream());
        if let Some(generated) = generated {
            out.extend(handler.register(self.attribute, generated));
        }
        out
    }
}

/// The struct a decorator is on.
pub(crate) struct Handler<'a> {
    pub(crate) item: &'a ItemStruct,
    accepts: &'static str,
}

impl Handler<'_> {
    /// The message the handler handles: `<Struct as Accepts..>::Message`, spanned on the
    /// struct's name. Every use is spanned alike, so a decorator on the wrong struct is one
    /// error, whatever the generated code does with the message.
    pub(crate) fn message(&self) -> TokenStream {
        let p = quote!(::cqrs_core::__private);
        let ident = &self.item.ident;
        let accepts = Ident::new(self.accepts, ident.span());
        quote_spanned!(ident.span()=> <#ident as #p::#accepts>::Message)
    }

    fn register(&self, attribute: &str, generated: Generated) -> TokenStream {
        let p = quote!(::cqrs_core::__private);
        let ident = &self.item.ident;
        let name = ident.to_string();
        let message = self.message();
        let Generated { items, decorator } = generated;
        let make = Ident::new(&format!("__cqrs_{attribute}"), Span::call_site());
        quote! {
            #[doc(hidden)]
            const _: () = {
                const _: () = #p::check::<#message>();
                #items
                fn #make() -> #p::Decorator {
                    #decorator
                }
                #p::inventory::submit! {
                    #p::DecoratorRegistration::new::<#ident>(
                        #name,
                        #p::Location::new(::core::file!(), ::core::line!(), ::core::column!()),
                        #make,
                    )
                }
            };
        }
    }
}
