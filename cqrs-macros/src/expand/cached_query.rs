//! `#[cached_query(..)]`: a `CacheSpec` with the key and `None` test generated for the query,
//! and the options written, on the runtime's defaults.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ItemStruct;

use crate::ast::CacheOptions;
use crate::attr::{Args, Spec};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};
use crate::expand::tokens::{self, call_site};

impl DecoratorAttribute for CacheOptions {
    const ATTRIBUTE: &'static str = CacheOptions::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsCachedQuery";
    const SPECS: &'static [Spec] = CacheOptions::SPECS;

    fn read(args: Args, _errors: &mut Errors) -> Option<Self> {
        Some(CacheOptions::from_args(args))
    }

    fn check(&mut self, _item: &ItemStruct, errors: &mut Errors) {
        check::cache(self, errors);
    }

    fn generate(&self, handler: &Handler<'_>) -> Generated {
        Generated {
            items: TokenStream::new(),
            decorator: cache_spec(self, &handler.message()),
        }
    }
}

/// `Decorator::Cache(CacheSpec::keyed(key, is_none).expire_after(..)..)`.
fn cache_spec(options: &CacheOptions, query: &TokenStream) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let key = match &options.vary_by {
        None => quote!(#p::whole_query_key::<#query>()),
        Some((_, fields)) => {
            // Each field access is spanned on the user's field name, so a missing field or
            // one that is not `Hash` is reported right there. The function's own variables
            // are not: inside a `macro_rules!` that span carries the macro's hygiene, under
            // which `query` and `hasher` written with it would name nothing.
            let (query_var, hasher) = (call_site("query"), call_site("hasher"));
            let hashes = fields.iter().map(|f| {
                quote_spanned!(f.span()=> ::cqrs_core::__private::hash_key_field(&(*#query_var).#f, #hasher);)
            });
            quote!({
                fn __cqrs_cache_key(query: &(dyn #p::Any + #p::Send + #p::Sync), hasher: &mut dyn #p::Hasher) {
                    if let #p::Some(query) = query.downcast_ref::<#query>() {
                        #(#hashes)*
                    }
                }
                __cqrs_cache_key
            })
        }
    };
    let mut spec = quote! {
        #p::CacheSpec::keyed(#key, {
            fn __cqrs_is_none(answer: &(dyn #p::Any + #p::Send + #p::Sync)) -> ::core::primitive::bool {
                #[allow(unused_imports)]
                use #p::{IsNoneOption as _, IsNoneOther as _};
                match answer.downcast_ref::<<#query as #p::QueryTrait>::Output>() {
                    #p::Some(answer) => (&&#p::IsNone(answer)).is_none_answer(),
                    #p::None => false,
                }
            }
            __cqrs_is_none
        })
    };
    if let Some((ttl, _)) = options.ttl {
        let ttl = tokens::duration(ttl);
        spec = quote!(#spec.expire_after(#ttl));
    }
    if let Some((_, fields)) = &options.vary_by {
        let names = fields.iter().map(ToString::to_string);
        spec = quote!(#spec.vary_by(&[#(#names),*]));
    }
    if let Some(cache_none) = options.cache_none {
        spec = quote!(#spec.cache_none(#cache_none));
    }
    if let Some((max, _)) = options.max_entries {
        spec = quote!(#spec.max_entries(#max));
    }
    if let Some(public) = options.public {
        spec = quote!(#spec.public(#public));
    }
    quote!(#p::Decorator::Cache(#spec))
}
