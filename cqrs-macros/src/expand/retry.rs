//! `#[retry(max_attempts = 3, delay = "50ms", backoff = 2.0, max_delay = "1s", jitter = true,
//! on = [Conflict, Unavailable])]`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::attr::{self, Kind, Leading, Value, opt};
use crate::expand::decorator::{Decorator, Generated};

/// Statuses decided before the retry layer runs: retrying cannot change them.
const NEVER_RETRIED: &[(&str, &str)] = &[
    (
        "Validation",
        "the message is validated before the retry layer runs, and would fail the same way again",
    ),
    (
        "NoHandler",
        "a missing handler is found before the retry layer runs, and would be missing again",
    ),
];

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let specs = [
        opt("max_attempts", Kind::Int),
        opt("delay", Kind::Duration),
        opt("backoff", Kind::Float),
        opt("max_delay", Kind::Duration),
        opt("jitter", Kind::BoolOrFloat),
        opt("on", Kind::Idents),
    ];
    let decorator = Decorator {
        attribute: "retry",
        accepts: "AcceptsRetry",
        leading: Leading::Nothing,
        specs: &specs,
    };
    decorator.expand(args, input, |args, _handler, errors| {
        let p = quote!(::cqrs_core::__private);
        let max_attempts = match args.int("max_attempts") {
            Some((0, span)) => {
                errors.at(
                    span,
                    "`max_attempts` counts the first attempt too, so it must be at least 1 (`1` never retries)",
                );
                1
            }
            Some((n, span)) => u32::try_from(n).unwrap_or_else(|_| {
                errors.at(span, format!("`max_attempts` is at most {}", u32::MAX));
                1
            }),
            None => 3,
        };
        let mut layer = quote!(#p::RetryLayer::new(#max_attempts));
        let delay = args.duration("delay");
        if let Some((d, _)) = delay {
            let d = attr::duration_tokens(d);
            layer = quote!(#layer.delay(#d));
        }
        if let Some((_, Value::Float(f, span))) = args.take("backoff") {
            if f < 1.0 || !f.is_finite() {
                errors.at(
                    span,
                    format!(
                        "`backoff` multiplies the delay after each attempt, so it must be at least 1.0 (`1.0` keeps the delay constant); `{f}` would shrink it"
                    ),
                );
            } else {
                layer = quote!(#layer.backoff(#f));
            }
        }
        if let Some((max, span)) = args.duration("max_delay") {
            if let Some((d, _)) = delay.filter(|(d, _)| *d > max) {
                errors.at(
                    span,
                    format!(
                        "`max_delay` ({max:?}) is shorter than `delay` ({d:?}): it caps the delay, so make it at least as long"
                    ),
                );
            }
            let max = attr::duration_tokens(max);
            layer = quote!(#layer.max_delay(#max));
        }
        match args.take("jitter") {
            Some((_, Value::Bool(true, _))) => layer = quote!(#layer.jitter(0.5)),
            Some((_, Value::Float(f, span))) => {
                if !(0.0..=1.0).contains(&f) {
                    errors.at(
                        span,
                        "`jitter` is the random fraction of each delay, between 0.0 and 1.0 (or `true` for 0.5)",
                    );
                } else {
                    layer = quote!(#layer.jitter(#f));
                }
            }
            _ => {}
        }
        if let Some((list_span, on)) = args.take_spanned_idents("on") {
            let mut retried = Vec::new();
            for status in &on {
                match NEVER_RETRIED.iter().find(|(name, _)| status == name) {
                    Some((_, why)) => errors.spanned(
                        status,
                        format!("`{status}` is never retried: {why}; retry transient statuses such as `Conflict`, `Timeout` or `Unavailable`"),
                    ),
                    None => retried.push(status.clone()),
                }
            }
            let retried = attr::statuses(&retried, "on", errors);
            if on.is_empty() {
                errors.at(
                    list_span,
                    "`on = []` would retry nothing; list the statuses to retry, or remove `#[retry]`",
                );
            }
            layer = quote!(#layer.on(&[#(#p::Status::#retried),*]));
        }
        Some(Generated {
            items: TokenStream::new(),
            decorator: quote!(#p::Decorator::Retry(#layer)),
        })
    })
}
