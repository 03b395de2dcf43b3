//! What every decorator attribute shares: read its options, check them and the struct it is on,
//! and register its configuration for that handler type (the runtime does the rest).

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{Ident, ItemStruct};

use crate::attr::{self, Args, Leading, Spec};
use crate::check;
use crate::errors::Errors;
use crate::item::{self, Target};

/// A decorator attribute's typed options, and how to check and generate them.
pub(crate) trait DecoratorAttribute: Sized {
    /// Its name, as written in `#[name(..)]`.
    const ATTRIBUTE: &'static str;
    /// The `__private` trait the handler attributes implement for the structs it may go on.
    const ACCEPTS: &'static str;
    /// What its arguments start with.
    const LEADING: Leading = Leading::Nothing;
    /// Its options.
    const SPECS: &'static [Spec] = &[];

    /// Reads the options (`crate::ast`); `None` when nothing can be generated.
    fn read(args: Args, errors: &mut Errors) -> Option<Self>;

    /// Checks the options and how they go with the struct (`crate::check`).
    fn check(&mut self, item: &ItemStruct, errors: &mut Errors);

    /// The code: an expression of type `Decorator`, and the items it uses.
    fn generate(&self, handler: &Handler<'_>) -> Generated;
}

/// What a decorator generates besides the registration.
pub(crate) struct Generated {
    /// Helper items (key functions, field readers).
    pub(crate) items: TokenStream,
    /// An expression of type `Decorator`.
    pub(crate) decorator: TokenStream,
}

/// The whole of a decorator attribute: the struct given back as written (its attributes of
/// this crate that clash with this one taken off), the errors, and the registration.
pub(crate) fn decorator_attribute<D: DecoratorAttribute>(
    args: TokenStream,
    input: TokenStream,
) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse(args, D::ATTRIBUTE, D::LEADING, D::SPECS, &mut errors);
    let mut item = match item::target(input, D::ATTRIBUTE, &mut errors) {
        Target::Struct(item) => item,
        Target::Rejected(item) => {
            let mut out = errors.to_compile_errors();
            out.extend(item);
            return out;
        }
    };
    check::clashing_attributes(&mut item, D::ATTRIBUTE, &mut errors);
    let options = D::read(args, &mut errors).map(|mut options| {
        options.check(&item, &mut errors);
        options
    });
    let handler = Handler {
        item: &item,
        accepts: D::ACCEPTS,
    };
    let mut out = errors.to_compile_errors();
    out.extend(item.to_token_stream());
    if let Some(options) = options {
        out.extend(handler.register(D::ATTRIBUTE, options.generate(&handler)));
    }
    out
}

/// The struct a decorator is on.
pub(crate) struct Handler<'a> {
    item: &'a ItemStruct,
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
