//! `#[cached_query(ttl = "5m", vary_by = [fields], cache_none = false, max_entries = 10000, public)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::attr::{self, Kind, Leading, opt};
use crate::expand::call_site;
use crate::expand::decorator::{Decorator, Generated};

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let specs = [
        opt("ttl", Kind::Duration),
        opt("vary_by", Kind::Idents),
        opt("cache_none", Kind::Bool),
        opt("max_entries", Kind::Int),
        opt("public", Kind::Flag),
    ];
    let decorator = Decorator {
        attribute: "cached_query",
        accepts: "AcceptsCachedQuery",
        leading: Leading::Nothing,
        specs: &specs,
    };
    decorator.expand(args, input, |args, handler, errors| {
        let p = quote!(::cqrs_core::__private);
        let query = handler.message();
        let ttl = match args.duration("ttl") {
            Some((d, span)) if d.is_zero() => {
                errors.at(
                    span,
                    "a `ttl` of zero caches nothing; give a positive duration, or remove `#[cached_query]`",
                );
                d
            }
            Some((d, _)) => d,
            None => std::time::Duration::from_secs(60),
        };
        let ttl = attr::duration_tokens(ttl);
        let vary_by = args.take_spanned_idents("vary_by");
        let key = match &vary_by {
            None => quote!(#p::whole_query_key::<#query>()),
            Some((list_span, fields)) => {
                let mut seen = Vec::new();
                for f in fields {
                    if seen.contains(f) {
                        errors.spanned(f, format!("`{f}` is listed twice in `vary_by`"));
                    }
                    seen.push(f.clone());
                }
                if fields.is_empty() {
                    errors.at(
                        *list_span,
                        "`vary_by = []` would give every query the same key; list the fields, or leave `vary_by` out to key on the whole query",
                    );
                }
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
            #p::CacheSpec::new(#ttl, #key, {
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
        if let Some((_, fields)) = &vary_by {
            let names = fields.iter().map(ToString::to_string);
            spec = quote!(#spec.vary_by(&[#(#names),*]));
        }
        if let Some((cache_none, _)) = args.bool("cache_none") {
            spec = quote!(#spec.cache_none(#cache_none));
        }
        if let Some((max, span)) = args.int("max_entries") {
            if max == 0 {
                errors.at(
                    span,
                    "`max_entries = 0` caches nothing; give a positive limit",
                );
            }
            spec = quote!(#spec.max_entries(#max));
        }
        if let Some((public, _)) = args.bool("public") {
            spec = quote!(#spec.public(#public));
        }
        Some(Generated {
            items: TokenStream::new(),
            decorator: quote!(#p::Decorator::Cache(#spec)),
        })
    })
}
