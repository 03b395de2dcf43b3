//! `#[retry(..)]`: a `RetryLayer` built from the options written, on the runtime's defaults.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

use crate::ast::{Jitter, RetryOptions};
use crate::attr::{Args, Spec};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};
use crate::expand::tokens;

impl DecoratorAttribute for RetryOptions {
    const ATTRIBUTE: &'static str = RetryOptions::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsRetry";
    const SPECS: &'static [Spec] = RetryOptions::SPECS;

    fn read(args: Args, errors: &mut Errors) -> Option<Self> {
        Some(RetryOptions::from_args(args, errors))
    }

    fn check(&mut self, _item: &ItemStruct, errors: &mut Errors) {
        check::retry(self, errors);
    }

    fn generate(&self, _handler: &Handler<'_>) -> Generated {
        Generated {
            items: TokenStream::new(),
            decorator: retry_layer(self),
        }
    }
}

/// `Decorator::Retry(RetryLayer::DEFAULT.delay(..)..)`.
fn retry_layer(options: &RetryOptions) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let mut layer = match options.max_attempts {
        Some((n, _)) => quote!(#p::RetryLayer::new(#n)),
        None => quote!(#p::RetryLayer::DEFAULT),
    };
    if let Some((d, _)) = options.delay {
        let d = tokens::duration(d);
        layer = quote!(#layer.delay(#d));
    }
    if let Some((f, _)) = options.backoff {
        layer = quote!(#layer.backoff(#f));
    }
    if let Some((max, _)) = options.max_delay {
        let max = tokens::duration(max);
        layer = quote!(#layer.max_delay(#max));
    }
    match options.jitter {
        Some(Jitter::Default) => layer = quote!(#layer.jitter(#p::RetryLayer::DEFAULT_JITTER)),
        Some(Jitter::Fraction(f, _)) => layer = quote!(#layer.jitter(#f)),
        Some(Jitter::Off) => layer = quote!(#layer.jitter(0.0)),
        None => {}
    }
    if let Some((_, on)) = &options.on {
        layer = quote!(#layer.on(&[#(#p::Status::#on),*]));
    }
    quote!(#p::Decorator::Retry(#layer))
}
