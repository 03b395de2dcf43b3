//! `#[timeout("2s")]`: the handler's overall deadline, retries included.

use proc_macro2::{Span, TokenStream};
use quote::quote;

use crate::attr::{self, Leading, Positional};
use crate::duration;
use crate::expand::decorator::{Decorator, Generated};
use crate::item;

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let decorator = Decorator {
        attribute: "timeout",
        accepts: "AcceptsTimeout",
        leading: Leading::Str("\"2s\""),
        specs: &[],
    };
    decorator.expand(args, input, |args, handler, errors| {
        let mut strings = args.positional.iter().filter_map(|p| match p {
            Positional::Str(s) => Some(s),
            Positional::Type(_) => None,
        });
        let Some(lit) = strings.next() else {
            errors.at(
                Span::call_site(),
                "`#[timeout]` needs a duration: `#[timeout(\"2s\")]`",
            );
            return None;
        };
        for extra in strings {
            errors.spanned(extra, "`#[timeout]` takes one duration");
        }
        let d = match duration::parse(&lit.value()) {
            Ok(d) => d,
            Err(message) => {
                errors.spanned(lit, message);
                return None;
            }
        };
        if d.is_zero() {
            errors.spanned(
                lit,
                "a timeout of zero would fail every dispatch; give a positive duration",
            );
        }
        // The handler attribute below also sets one: report it there (the second one written).
        if let Some(second) = item::handler_option(handler.item, "timeout") {
            errors.spanned(
                &second,
                "the timeout is given twice: here and in `#[timeout(..)]`; keep one",
            );
        }
        let d = attr::duration_tokens(d);
        Some(Generated {
            items: TokenStream::new(),
            decorator: quote!(::cqrs_core::__private::Decorator::Timeout(#d)),
        })
    })
}
