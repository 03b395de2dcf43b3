//! `#[transactional(isolation = "serializable", rollback_on = [..])]` on command handlers.

use proc_macro2::TokenStream;
use quote::quote;

use crate::attr::{self, Kind, Leading, opt};
use crate::expand::decorator::{Decorator, Generated};

/// The isolation levels, as written in `isolation = ".."`, and their `Isolation` variants.
const LEVELS: &[(&str, &str)] = &[
    ("read_committed", "ReadCommitted"),
    ("repeatable_read", "RepeatableRead"),
    ("serializable", "Serializable"),
];

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let specs = [
        opt("isolation", Kind::Str),
        opt("rollback_on", Kind::Idents),
    ];
    let decorator = Decorator {
        attribute: "transactional",
        accepts: "AcceptsTransactional",
        leading: Leading::Nothing,
        specs: &specs,
    };
    decorator.expand(args, input, |args, _handler, errors| {
        let p = quote!(::cqrs_core::__private);
        let mut layer = quote!(#p::TransactionLayer::new());
        if let Some(level) = args.str("isolation") {
            let written = level.value();
            let normalized = written.trim().to_ascii_lowercase().replace([' ', '-'], "_");
            match LEVELS.iter().find(|(name, _)| *name == normalized) {
                Some((_, variant)) => {
                    let variant = syn::Ident::new(variant, level.span());
                    layer = quote!(#layer.isolation(#p::Isolation::#variant));
                }
                None => {
                    let known: Vec<String> = LEVELS
                        .iter()
                        .map(|(name, _)| format!("\"{name}\""))
                        .collect();
                    let known = known.join(", ");
                    let guess = attr::closest(&normalized, LEVELS.iter().map(|(n, _)| *n));
                    let message = match guess {
                        Some(guess) => format!(
                            "unknown isolation level \"{written}\": did you mean \"{guess}\"? The levels are {known}"
                        ),
                        None => format!(
                            "unknown isolation level \"{written}\"; the levels are {known}"
                        ),
                    };
                    errors.spanned(&level, message);
                }
            }
        }
        if let Some(on) = args.idents("rollback_on") {
            let on = attr::statuses(&on, "rollback_on", errors);
            layer = quote!(#layer.rollback_on(&[#(#p::Status::#on),*]));
        }
        Some(Generated {
            items: TokenStream::new(),
            decorator: quote!(#p::Decorator::Transactional(#layer)),
        })
    })
}
