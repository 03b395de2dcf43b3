//! Small token helpers shared by the generators.

use std::time::Duration;

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::quote;

/// A variable of generated code, named at the call site.
///
/// Generated code is often spanned on a user's token (a field name, a type) so that the
/// compiler reports a mistake right under it. A span also carries hygiene: when the token comes
/// from a `macro_rules!`, a variable written with its span resolves in that macro's context,
/// where the generated function's own parameters do not exist. Such variables are built here
/// and interpolated instead.
pub(crate) fn call_site(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

/// The tokens of a `Duration` constant.
pub(crate) fn duration(d: Duration) -> TokenStream {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    quote!(::cqrs_core::__private::Duration::new(#secs, #nanos))
}

/// Gives every token the same span, so that the errors rustc reports on them are identical
/// (and merged) wherever the tokens are used.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}
